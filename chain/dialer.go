package chain

import (
	"context"
	"fmt"
	"net"

	"golang.org/x/net/proxy"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// Dialer dials through one chain of a Client with fixed per-hop arguments:
// a Go program can embed chains wherever it takes an x/net/proxy dialer.
// The address dialled is the bridge (the server combiner's public port).
type Dialer struct {
	Client *Client
	Chain  string        // an alias, or a method as a one-hop chain
	Args   metadata.Args // N.key for hop N, unprefixed for every hop
}

var (
	_ proxy.ContextDialer = Dialer{}
	_ proxy.Dialer        = Dialer{}
)

// DialContext connects to addr through the chain.
func (d Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("chain %s: network %q is not supported, only tcp", d.Chain, network)
	}
	conn, err := d.Client.Dial(ctx, d.Chain, addr, d.Args)
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// Dial is DialContext without a context.
func (d Dialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}
