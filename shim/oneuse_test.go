package shim

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// assertListenerClosed checks the one-use listener itself is closed.
func assertListenerClosed(t *testing.T, o *OneUse) {
	t.Helper()
	if _, err := o.ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("listener still open: Accept returned %v", err)
	}
}

func TestOneUseAcceptsOnce(t *testing.T) {
	o, err := ListenOnce("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if !o.Addr().IP.IsLoopback() || o.Addr().Port == 0 {
		t.Fatalf("Addr() = %v", o.Addr())
	}
	dialed := make(chan error, 1)
	go func() {
		c, err := net.DialTCP("tcp", nil, o.Addr())
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := o.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	conn.Close()
	if err := <-dialed; err != nil {
		t.Fatalf("dial: %v", err)
	}
	assertListenerClosed(t, o)
	if _, err := o.Accept(ctx); !errors.Is(err, ErrUsed) {
		t.Errorf("second Accept: %v, want ErrUsed", err)
	}
	if err := o.Close(); err != nil {
		t.Errorf("Close after Accept: %v", err)
	}
	if err := o.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestOneUseEnds(t *testing.T) {
	tests := []struct {
		name  string
		setup func(o *OneUse) (context.Context, context.CancelFunc)
		check func(t *testing.T, err error)
	}{
		{"cancel unblocks", func(*OneUse) (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			// Best effort to cancel while Accept waits; either order
			// must end the same way.
			go func() { time.Sleep(20 * time.Millisecond); cancel() }()
			return ctx, cancel
		}, func(t *testing.T, err error) {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
		}},
		{"already cancelled", func(*OneUse) (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}, func(t *testing.T, err error) {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("got %v, want context.Canceled", err)
			}
		}},
		{"deadline", func(*OneUse) (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 30*time.Millisecond)
		}, func(t *testing.T, err error) {
			if err == nil || ReplyCodeFor(err) != RepTTLExpired {
				t.Errorf("got %v, want a timeout", err)
			}
		}},
		{"closed before Accept", func(o *OneUse) (context.Context, context.CancelFunc) {
			o.Close()
			return context.WithCancel(context.Background())
		}, func(t *testing.T, err error) {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("got %v, want net.ErrClosed", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := ListenOnce("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := tt.setup(o)
			defer cancel()
			conn, err := o.Accept(ctx)
			if conn != nil {
				conn.Close()
				t.Fatal("Accept returned a connection")
			}
			tt.check(t, err)
			assertListenerClosed(t, o)
			if _, err := o.Accept(context.Background()); !errors.Is(err, ErrUsed) {
				t.Errorf("second Accept: %v, want ErrUsed", err)
			}
		})
	}
}

func TestListenOnceBadAddr(t *testing.T) {
	for _, addr := range []string{"127.0.0.1", "256.0.0.1:0", "127.0.0.1:99999"} {
		if o, err := ListenOnce(addr); err == nil {
			o.Close()
			t.Errorf("ListenOnce(%q) succeeded", addr)
		}
	}
}
