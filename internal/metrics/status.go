package metrics

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// DefaultStatusInterval is how often ReportStatus writes, by default.
const DefaultStatusInterval = 60 * time.Second

// StatusLines returns one PT 1.0 STATUS line per chain that has seen a
// connection, with its counters since the start:
//
//	STATUS TRANSPORT=<alias> CONNECTIONS=<opened> OPEN=<open now> FAILED=<failed>
//	  [FAILED_HOP_<n>=<k>]... [FAILED_DEST=<k>] [FAILED_NONE=<k>] BYTES_UP=<n> BYTES_DOWN=<n>
//
// pt-spec 3.3.5: "STATUS TRANSPORT=<transport> <K_1>=<V_1> [<K_2>=<V_2>
// ...]"; tor 0.4.8 requires TRANSPORT= (PROTOCOLS.md A17), reads the
// rest as a kvline with quoted values allowed (KV_QUOTED), and emits it
// as a PT_STATUS control event with PT=<program> prepended. Keys are
// fixed, [A-Z0-9_]; values are decimal counts, and the alias a C
// identifier, quoted as a CString should it ever not be one.
func (r *Registry) StatusLines() []string {
	var lines []string
	for _, s := range r.Snapshot() {
		if s.Opened == 0 {
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "STATUS TRANSPORT=%s CONNECTIONS=%d OPEN=%d FAILED=%d", statusValue(s.Alias), s.Opened, s.Open, s.Failed)
		hops := make([]string, 0, len(s.FailedByHop))
		for h := range s.FailedByHop {
			hops = append(hops, h)
		}
		sort.Slice(hops, func(i, j int) bool { return hopOrder(hops[i]) < hopOrder(hops[j]) })
		for _, h := range hops {
			key := "FAILED_HOP_" + h
			if h == "dest" || h == "none" {
				key = "FAILED_" + strings.ToUpper(h)
			}
			fmt.Fprintf(&b, " %s=%d", key, s.FailedByHop[h])
		}
		fmt.Fprintf(&b, " BYTES_UP=%d BYTES_DOWN=%d", s.Upstream, s.Downstream)
		lines = append(lines, b.String())
	}
	return lines
}

// hopOrder sorts hop labels: 0, 1, ..., then dest, then none.
func hopOrder(h string) int {
	switch h {
	case "dest":
		return 1 << 30
	case "none":
		return 1<<30 + 1
	}
	n := 0
	fmt.Sscan(h, &n)
	return n
}

// statusValue is v as a STATUS value: as it is when it is a plain token,
// else a CString (pt-spec 3.3.4's quoting, as goptlib's encodeCString).
func statusValue(v string) string {
	plain := v != ""
	for _, c := range []byte(v) {
		plain = plain && (c == '_' || c == '-' || c == '.' || '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z')
	}
	if plain {
		return v
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(v) {
		if c == 32 || c == 33 || (35 <= c && c <= 91) || (93 <= c && c <= 126) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "\\%03o", c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// ReportStatus writes StatusLines to w (tor's stdout) every interval
// until ctx ends; a chain's line is written again only when it changed.
// Each line goes out in one Write, so that it never interleaves with the
// program's other protocol lines.
func (r *Registry) ReportStatus(ctx context.Context, w io.Writer, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := map[string]string{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, l := range r.StatusLines() {
			alias := strings.Fields(l)[1]
			if last[alias] == l {
				continue
			}
			last[alias] = l
			io.WriteString(w, l+"\n")
		}
	}
}
