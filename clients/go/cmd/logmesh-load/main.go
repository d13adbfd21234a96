// Command logmesh-load drives a logmesh server from grpc-go, as a third-party client would:
//
//	logmesh-load -addr 127.0.0.1:50052 -rpc score -calls 20000 -inflight 64
//	    unary Score (or -rpc embed: Embed) calls, -inflight at a time on one connection; prints a JSON
//	    summary {"calls", "ok", "errors": {"<code>: <message>": count}, "seconds"} and exits 1 on any error.
//	logmesh-load -addr 127.0.0.1:50052 -rpc reflect -reflection v1 -symbol logmesh.v1.ScorerService.Score
//	    asks server reflection (grpc.reflection.v1 or v1alpha) for the file containing the symbol; prints the
//	    files it got and exits 1 when the server answers with an error or without the symbol.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	rv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	rv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	logmeshv1 "github.com/logmesh/logmesh/clients/go/gen/logmesh/v1"
)

const defaultLine = "081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38865049064139660 terminating"

type summary struct {
	Calls   int64            `json:"calls"`
	OK      int64            `json:"ok"`
	Errors  map[string]int64 `json:"errors"`
	Seconds float64          `json:"seconds"`
}

func load(conn *grpc.ClientConn, rpc, line string, calls int64, inflight int, timeout time.Duration) summary {
	scorer := logmeshv1.NewScorerServiceClient(conn)
	embedder := logmeshv1.NewEmbedderServiceClient(conn)
	var next, ok atomic.Int64
	var mu sync.Mutex
	errors := map[string]int64{}
	started := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < inflight; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= calls {
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				var err error
				if rpc == "embed" {
					_, err = embedder.Embed(ctx, &logmeshv1.EmbedRequest{Text: line})
				} else {
					_, err = scorer.Score(ctx, &logmeshv1.ScoreRequest{Item: &logmeshv1.ScoreItem{
						Input: &logmeshv1.ScoreItem_RawLine{RawLine: line}}})
				}
				cancel()
				if err != nil {
					s := status.Convert(err)
					mu.Lock()
					errors[s.Code().String()+": "+s.Message()]++
					mu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return summary{Calls: calls, OK: ok.Load(), Errors: errors, Seconds: time.Since(started).Seconds()}
}

// reflect returns the names of the files the server sent for symbol, or an error.
func reflect(conn *grpc.ClientConn, version, symbol string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var raw [][]byte
	switch version {
	case "v1":
		stream, err := rv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return nil, err
		}
		req := &rv1.ServerReflectionRequest{MessageRequest: &rv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}}
		if err := stream.Send(req); err != nil {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if e := resp.GetErrorResponse(); e != nil {
			return nil, fmt.Errorf("error_response %d: %s", e.GetErrorCode(), e.GetErrorMessage())
		}
		raw = resp.GetFileDescriptorResponse().GetFileDescriptorProto()
	case "v1alpha":
		stream, err := rv1alpha.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return nil, err
		}
		req := &rv1alpha.ServerReflectionRequest{MessageRequest: &rv1alpha.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: symbol}}
		if err := stream.Send(req); err != nil {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		if e := resp.GetErrorResponse(); e != nil {
			return nil, fmt.Errorf("error_response %d: %s", e.GetErrorCode(), e.GetErrorMessage())
		}
		raw = resp.GetFileDescriptorResponse().GetFileDescriptorProto()
	default:
		return nil, fmt.Errorf("-reflection must be v1 or v1alpha, not %q", version)
	}
	var names []string
	found := false
	for _, b := range raw {
		var file descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(b, &file); err != nil {
			return nil, err
		}
		names = append(names, file.GetName())
		for _, service := range file.GetService() {
			for _, method := range service.GetMethod() {
				if file.GetPackage()+"."+service.GetName()+"."+method.GetName() == symbol {
					found = true
				}
			}
			if file.GetPackage()+"."+service.GetName() == symbol {
				found = true
			}
		}
	}
	if !found {
		return names, fmt.Errorf("no file sent declares %s (got %s)", symbol, strings.Join(names, ", "))
	}
	return names, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50052", "server address host:port")
	rpc := flag.String("rpc", "score", "score, embed or reflect")
	calls := flag.Int64("calls", 20000, "calls in all")
	inflight := flag.Int("inflight", 64, "calls in flight at once, all on one connection")
	line := flag.String("line", defaultLine, "the raw HDFS line to score or embed")
	timeout := flag.Duration("timeout", 30*time.Second, "deadline of each call")
	version := flag.String("reflection", "v1", "reflection: v1 or v1alpha")
	symbol := flag.String("symbol", "logmesh.v1.ScorerService.Score", "reflection: the symbol to resolve")
	flag.Parse()

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer conn.Close()
	if *rpc == "reflect" {
		names, err := reflect(conn, *version, *symbol)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s over grpc.reflection.%s: %v\n", *symbol, *version, err)
			os.Exit(1)
		}
		fmt.Println(strings.Join(names, "\n"))
		return
	}
	out := load(conn, *rpc, *line, *calls, *inflight, *timeout)
	json.NewEncoder(os.Stdout).Encode(out)
	if out.OK != out.Calls {
		os.Exit(1)
	}
}
