GET /a?b=c HTTP/1.1
Host: h
Accept: */*

