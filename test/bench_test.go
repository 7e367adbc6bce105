package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// BenchmarkChains measures, in one run, a direct loopback connection and
// chains of 1, 2 and 3 hops of the test PT through ptcombiner-client, and
// reports each chain's throughput and setup latency as ratios against the
// direct connection (never as absolute thresholds: the machine is shared).
//
//	go test -run '^$' -bench Chains -benchtime 20x ./test/
func BenchmarkChains(b *testing.B) {
	const size = 8 << 20
	echo := echoServer(b)
	c := startCombiner(b, []string{"test", "t2", "t3"}, testpFlags()...)
	type variant struct {
		name   string
		bridge string
		args   metadata.Args
		alias  string
	}
	variants := []variant{{name: "direct", bridge: echo}}
	for hops, alias := range []string{"test", "t2", "t3"} {
		bridge, args := serverChain(b, echo, testHops(hops+1))
		variants = append(variants, variant{fmt.Sprintf("%dhop", hops+1), bridge, args, alias})
	}
	dial := func(v variant) (*net.TCPConn, error) {
		if v.alias == "" {
			conn, err := net.Dial("tcp", v.bridge)
			if err != nil {
				return nil, err
			}
			return conn.(*net.TCPConn), nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return c.dial(ctx, v.alias, v.bridge, v.args)
	}
	buf := make([]byte, size)
	setup := make([]time.Duration, len(variants))
	transfer := make([]time.Duration, len(variants))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, v := range variants {
			start := time.Now()
			conn, err := dial(v)
			if err != nil {
				b.Fatal(err)
			}
			// Setup ends with the first byte back from the far end.
			conn.Write([]byte{1})
			if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
				b.Fatal(err)
			}
			setup[j] += time.Since(start)
			start = time.Now()
			go conn.Write(buf)
			if _, err := io.CopyN(io.Discard, conn, size); err != nil {
				b.Fatal(err)
			}
			transfer[j] += time.Since(start)
			conn.Close()
		}
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	for j, v := range variants {
		b.ReportMetric(mbps(transfer[j]), v.name+"-MB/s")
		b.ReportMetric(float64(setup[j].Microseconds())/float64(b.N), v.name+"-setup-µs")
		if j > 0 {
			b.ReportMetric(mbps(transfer[j])/mbps(transfer[0]), v.name+"/direct-throughput")
			b.ReportMetric(float64(setup[j])/float64(setup[0]), v.name+"/direct-setup")
		}
	}
}
