package transport

import (
	"context"
	"strings"
	"testing"
)

// TestRoundTrips sends every size through in-process obfs2, obfs3 and
// obfs4 alone and through the nested chains obfs3|obfs4 and obfs4|obfs4:
// a client chain against a server chain over one loopback TCP connection,
// half-close crossing every hop.
func TestRoundTrips(t *testing.T) {
	for _, spec := range []string{"obfs2", "obfs3", "obfs4", "obfs3|obfs4", "obfs4|obfs4"} {
		t.Run(strings.ReplaceAll(spec, "|", "_"), func(t *testing.T) {
			dialer, server := chainOf(t, strings.Split(spec, "|")...)
			addr := serveEcho(t, server)
			for _, n := range sizes() {
				t.Run(sizeName(n), func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
					defer cancel()
					c, err := dialer.Dial(ctx, server.ClientArgs(), addr, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					exchange(t, c, payload(n), true)
					if s := c.Stats(); s.Read != int64(n) || s.Written != int64(n) || s.Setup <= 0 {
						t.Errorf("stats %+v after %d bytes each way", s, n)
					}
				})
			}
		})
	}
}
