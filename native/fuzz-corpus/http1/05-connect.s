HTTP/1.1 407 Proxy Authentication Required
Content-Length: 0

HTTP/1.1 200 OK
Content-Length: 0

