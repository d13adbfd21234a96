// Command oldparse parses .proto files with github.com/jhump/protoreflect v1.6.1's protoparse, a parser
// from before proto3 `optional` existed (v1.7.0 added it), as load-testing and mocking tools that embed an
// older parser do. It exits 1 and prints the parser's error when a file is refused.
//
//	oldparse -I protos logmesh/v1/common.proto logmesh/v1/scorer_service.proto ...
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/jhump/protoreflect/desc/protoparse"
)

func main() {
	importPath := flag.String("I", ".", "folder the file names are relative to")
	flag.Parse()
	parser := protoparse.Parser{ImportPaths: []string{*importPath}}
	files, err := parser.ParseFiles(flag.Args()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, f := range files {
		fmt.Printf("%s: %d messages, %d services\n", f.GetName(), len(f.GetMessageTypes()), len(f.GetServices()))
	}
}
