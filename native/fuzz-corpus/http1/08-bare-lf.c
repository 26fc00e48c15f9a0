GET / HTTP/1.1
A: b

GET /x HTTP/1.1

ZGET /evil: HTTP/1.1

