HTTP/1.1 400 Bad Request
Content-Length: 0

