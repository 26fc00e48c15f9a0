HTTP/1.1 200 OK
Content-Length: 5

hello