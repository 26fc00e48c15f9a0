CONNECT h:443 HTTP/1.1
Content-Length: 5

GET /after HTTP/1.1

