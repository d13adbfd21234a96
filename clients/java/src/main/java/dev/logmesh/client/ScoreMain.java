package dev.logmesh.client;

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.stub.StreamObserver;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.io.BufferedOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import logmesh.v1.Score.ScoreResult;
import logmesh.v1.Score.Verdict;
import logmesh.v1.ScorerServiceGrpc;
import logmesh.v1.ScorerServiceOuterClass.ScoreItem;
import logmesh.v1.ScorerServiceOuterClass.ScoreItemResult;
import logmesh.v1.ScorerServiceOuterClass.ScoreStreamRequest;
import logmesh.v1.ScorerServiceOuterClass.ScoreStreamResponse;

/**
 * Reads raw HDFS log lines from stdin, scores them over one bidirectional ScorerService/ScoreStream in
 * batches and prints one line per input line: {@code <VERDICT> <score|error message> <record_id>}.
 */
public final class ScoreMain {
  private ScoreMain() {}

  static String verdictName(Verdict v) {
    switch (v) {
      case VERDICT_NORMAL: return "NORMAL";
      case VERDICT_ANOMALY: return "ANOMALY";
      default: return "UNSPECIFIED";
    }
  }

  public static void main(String[] args) throws Exception {
    String scorer = "127.0.0.1:50052";
    int batchSize = 256;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--scorer": scorer = args[++i]; break;
        case "--batch-size": batchSize = Integer.parseInt(args[++i]); break;
        default:
          System.err.println("usage: logmesh-client [--scorer host:port] [--batch-size N] < lines");
          System.exit(2);
      }
    }
    ManagedChannel channel = ManagedChannelBuilder.forTarget(scorer).usePlaintext()
        .maxInboundMessageSize(64 << 20).build();
    PrintStream out = new PrintStream(new BufferedOutputStream(System.out), false, StandardCharsets.UTF_8);
    CountDownLatch done = new CountDownLatch(1);
    AtomicReference<Throwable> failure = new AtomicReference<>();
    StreamObserver<ScoreStreamResponse> responses = new StreamObserver<>() {
      @Override public void onNext(ScoreStreamResponse reply) {
        if (reply.hasError()) {
          failure.compareAndSet(null, new IllegalStateException("batch " + reply.getBatchId() + " rejected: code "
              + reply.getError().getCode() + ": " + reply.getError().getMessage()));
          return;
        }
        for (ScoreItemResult r : reply.getResultsList()) {
          if (r.hasResult()) {
            ScoreResult res = r.getResult();
            out.printf(Locale.ROOT, "%s %.4f %s%n", verdictName(res.getVerdict()), res.getScore(), r.getRecordId());
          } else if (r.hasError()) {
            out.printf(Locale.ROOT, "ERROR %s %s%n", r.getError().getMessage(), r.getRecordId());
          } else {
            out.printf(Locale.ROOT, "ERROR no outcome %s%n", r.getRecordId());
          }
        }
      }
      @Override public void onError(Throwable t) { failure.compareAndSet(null, t); done.countDown(); }
      @Override public void onCompleted() { done.countDown(); }
    };
    StreamObserver<ScoreStreamRequest> requests = ScorerServiceGrpc.newStub(channel).scoreStream(responses);
    try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
      List<ScoreItem> batch = new ArrayList<>();
      long batchId = 0;
      String line;
      while ((line = in.readLine()) != null) {
        batch.add(ScoreItem.newBuilder().setRawLine(line).build());
        if (batch.size() >= batchSize) {
          requests.onNext(ScoreStreamRequest.newBuilder().setBatchId(batchId++).addAllItems(batch).build());
          batch.clear();
        }
      }
      if (!batch.isEmpty()) {
        requests.onNext(ScoreStreamRequest.newBuilder().setBatchId(batchId).addAllItems(batch).build());
      }
      requests.onCompleted();
    } catch (RuntimeException e) {
      requests.onError(e);
      throw e;
    }
    done.await();
    out.flush();
    channel.shutdown().awaitTermination(5, TimeUnit.SECONDS);
    if (failure.get() != null) {
      System.err.println("logmesh-client: " + failure.get());
      System.exit(1);
    }
  }
}
