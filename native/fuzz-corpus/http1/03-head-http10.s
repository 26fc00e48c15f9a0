HTTP/1.1 200 OK
Content-Length: 99

HTTP/1.0 200 OK

until close