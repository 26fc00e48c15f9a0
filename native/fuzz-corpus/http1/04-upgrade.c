GET /ws HTTP/1.1
Upgrade: websocket
Connection: Upgrade

ÅÄabcd