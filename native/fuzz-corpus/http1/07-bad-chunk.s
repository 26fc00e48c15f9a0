HTTP/1.1 400 Bad Request
Connection: close

