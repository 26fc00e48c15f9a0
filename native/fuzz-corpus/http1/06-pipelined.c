GET / HTTP/1.1
Host: h

GET / HTTP/1.1
Host: h

GET / HTTP/1.1

