HTTP/1.1 204 No Content

HTTP/1.1 304 NM

HTTP/1.1 200 OK
Connection: close

body