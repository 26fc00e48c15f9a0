POST /p HTTP/1.1
Transfer-Encoding: chunked

4;ext="q\"x"
wiki
0
T: v

