package chain

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
	"github.com/ptcombiner/ptcombiner/transport"
)

// socksDial asks a SOCKSServer listener for target with args, as tor asks
// a PT.
func socksDial(t *testing.T, addr, target string, args metadata.Args) (*net.TCPConn, error) {
	t.Helper()
	user, pass, err := socksCredentials(args)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	return shim.DialSOCKS5(ctx, addr, target, user, pass)
}

// The library's SOCKS listener grants a request once its chain is set up,
// refuses one with the failing hop's reply code, caps the connections
// open at once, and ends everything at Close.
func TestSOCKSServer(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	bridge, args := inProcessBridge(t, "obfs3", "obfs4")
	cli := clientOf(t, "ClientTransportPlugin obfs3,obfs4 builtin\nAlias c obfs3|obfs4\n", 0, "c")
	srv := &SOCKSServer{Client: cli, MaxConns: 1, Logger: newLogger(&logBuf{})}
	ln := listenLoopback(t)
	var served sync.WaitGroup
	var serveErr error
	served.Go(func() { serveErr = srv.Serve(ln, "c") })

	conn, err := socksDial(t, ln.Addr().String(), bridge, args)
	if err != nil {
		t.Fatal(err)
	}
	// Over the cap: closed at once, before any SOCKS reply.
	if _, err := socksDial(t, ln.Addr().String(), bridge, args); err == nil {
		t.Error("a second connection over MaxConns 1 was granted")
	}
	if err := roundTrip(conn, 100000); err != nil {
		t.Fatal(err)
	}
	// The cap counts open connections: once the first has gone, another
	// one is served; its outermost hop cannot reach port 1.
	var re *shim.ReplyError
	waitFor(t, "a refusal with the outer hop's reply code", eventCeiling, func() bool {
		_, err := socksDial(t, ln.Addr().String(), "127.0.0.1:1", args)
		return errors.As(err, &re)
	})
	if re.Code != shim.RepConnectionRefused {
		t.Errorf("reply %v, want connection refused", re)
	}
	srv.Close()
	served.Wait()
	if !errors.Is(serveErr, ErrServerClosed) {
		t.Errorf("Serve returned %v, want ErrServerClosed", serveErr)
	}
	if err := srv.Serve(listenLoopback(t), "c"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close = %v", err)
	}
}

// A chain of a Client is a transport.Dialer: here the one-hop chain c4 is
// the outer hop of a transport.ClientChain, under an in-process obfs3.
func TestChainAsTransport(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	bridge, args := inProcessBridge(t, "obfs3", "obfs4")
	cli := clientOf(t, "ClientTransportPlugin obfs4 builtin\nAlias c4 obfs4\n", 0, "c4")
	obfs3, err := transport.BuiltinClient().Start(context.Background(), transport.ClientConfig{Methods: []string{"obfs3"}})
	if err != nil {
		t.Fatal(err)
	}
	d := transport.ClientChain(obfs3.Dialers()["obfs3"], cli.Transport("c4"))
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	conn, err := d.Dial(ctx, args, bridge, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(conn, 100000); err != nil {
		t.Fatal(err)
	}
	if s := conn.Stats(); s.Read != 100000 || s.Setup <= 0 || s.Setup > time.Hour {
		t.Errorf("stats %+v", s)
	}
}
