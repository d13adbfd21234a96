module github.com/logmesh/logmesh/tests/go/oldparse

go 1.25.0

require github.com/jhump/protoreflect v1.6.1

require (
	github.com/golang/protobuf v1.3.1 // indirect
	google.golang.org/genproto v0.0.0-20170818010345-ee236bd376b0 // indirect
)
