// Command logmesh-score reads raw HDFS log lines from stdin, scores them over one bidirectional
// logmesh.v1.ScorerService/ScoreStream in batches, and prints one line per input line:
//
//	NORMAL 0.0371 <record_id>
//	ANOMALY 0.9120 <record_id>
//	ERROR <error message> <record_id>
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	logmeshv1 "github.com/logmesh/logmesh/clients/go/gen/logmesh/v1"
)

func verdictName(v logmeshv1.Verdict) string {
	switch v {
	case logmeshv1.Verdict_VERDICT_NORMAL:
		return "NORMAL"
	case logmeshv1.Verdict_VERDICT_ANOMALY:
		return "ANOMALY"
	default:
		return "UNSPECIFIED"
	}
}

func run() error {
	scorer := flag.String("scorer", "127.0.0.1:50052", "scorer address host:port")
	batchSize := flag.Int("batch-size", 256, "lines per ScoreStream batch")
	flag.Parse()

	conn, err := grpc.NewClient(*scorer,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := logmeshv1.NewScorerServiceClient(conn).ScoreStream(context.Background())
	if err != nil {
		return err
	}

	// Sender: batches of raw lines; the receiver below runs concurrently (pipelined batches).
	sendErr := make(chan error, 1)
	go func() {
		defer func() { _ = stream.CloseSend() }()
		in := bufio.NewReader(os.Stdin)
		var batch []*logmeshv1.ScoreItem
		var batchID uint64
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			err := stream.Send(&logmeshv1.ScoreStreamRequest{BatchId: batchID, Items: batch})
			batchID++
			batch = nil
			return err
		}
		for {
			line, err := in.ReadString('\n')
			if len(line) > 0 || err == nil {
				line = strings.TrimRight(line, "\r\n")
				batch = append(batch, &logmeshv1.ScoreItem{Input: &logmeshv1.ScoreItem_RawLine{RawLine: line}})
				if len(batch) >= *batchSize {
					if err := flush(); err != nil {
						sendErr <- err
						return
					}
				}
			}
			if err == io.EOF {
				sendErr <- flush()
				return
			}
			if err != nil {
				sendErr <- err
				return
			}
		}
	}()

	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for {
		reply, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if reply.Error != nil {
			return fmt.Errorf("batch %d rejected: code %d: %s", reply.BatchId, reply.Error.Code, reply.Error.Message)
		}
		for _, r := range reply.Results {
			switch o := r.Outcome.(type) {
			case *logmeshv1.ScoreItemResult_Result:
				fmt.Fprintf(out, "%s %.4f %s\n", verdictName(o.Result.Verdict), o.Result.Score, r.RecordId)
			case *logmeshv1.ScoreItemResult_Error:
				fmt.Fprintf(out, "ERROR %s %s\n", o.Error.Message, r.RecordId)
			default:
				fmt.Fprintf(out, "ERROR no outcome %s\n", r.RecordId)
			}
		}
	}
	return <-sendErr
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "logmesh-score:", err)
		os.Exit(1)
	}
}
