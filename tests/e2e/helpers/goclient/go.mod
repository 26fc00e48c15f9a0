module plaintap.test/goclient

go 1.19
