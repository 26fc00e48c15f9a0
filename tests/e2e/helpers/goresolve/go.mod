module plaintap.test/goresolve

go 1.19
