package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/procstat"
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

// BenchmarkCombinerCost measures what ptcombiner-client itself costs, apart
// from its PTs: CPU seconds per GiB carried through a 2-hop chain (the test
// PT with key 0, an identity transform), and resident memory per idle
// chained connection per hop with 1000 connections open.
//
//	go test -run '^$' -bench CombinerCost -benchtime 3x ./test/
func BenchmarkCombinerCost(b *testing.B) {
	const size = 64 << 20
	const idle = 1000
	echo := echoServer(b)
	c := startCombiner(b, []string{"t2"}, testpFlags()...)
	hops := testHops(2)
	for i := range hops {
		hops[i].options = metadata.Args{"key": {"0"}}
	}
	bridge, args := serverChain(b, echo, hops)
	pid := c.proc.Pid()
	buf := make([]byte, size)
	var cpu float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		conn, err := c.dial(ctx, "t2", bridge, args)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		before := procstat.CPUSeconds(pid)
		go conn.Write(buf)
		if _, err := io.CopyN(io.Discard, conn, size); err != nil {
			b.Fatal(err)
		}
		cpu += procstat.CPUSeconds(pid) - before
		conn.Close()
	}
	b.StopTimer()
	// Both directions cross the combiner's two splice points.
	gib := float64(2*size) * float64(b.N) / (1 << 30)
	b.ReportMetric(cpu/gib, "combiner-cpu-s/GiB")

	time.Sleep(200 * time.Millisecond)
	rss0 := procstat.RSSKiB(pid)
	var conns []*net.TCPConn
	for i := 0; i < idle; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		conn, err := c.dial(ctx, "t2", bridge, args)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, conn)
	}
	time.Sleep(200 * time.Millisecond)
	rss1 := procstat.RSSKiB(pid)
	for _, conn := range conns {
		conn.Close()
	}
	b.ReportMetric(float64(rss1-rss0)/idle/2, "combiner-KiB/conn/hop")
}
