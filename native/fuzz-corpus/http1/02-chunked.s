HTTP/1.1 100 Continue

HTTP/1.1 201 Created
Transfer-Encoding: chunked

3
abc
0

