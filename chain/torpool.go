package chain

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
)

// TorInstance is one tor's Extended ORPort and the cookie file it writes
// there (ExtORPortCookieAuthFile).
type TorInstance struct {
	ExtORPort  string
	CookiePath string
}

// Backoff of a tor instance that failed a dial or a handshake: skipped for
// torBackoffMin, doubled at each failure in a row up to torBackoffMax.
const (
	torBackoffMin = 500 * time.Millisecond
	torBackoffMax = 30 * time.Second
)

// torPool spreads finished streams over tor instances, as several tor
// processes with one identity serve one bridge: each stream goes to the
// instance with the fewest streams open (ties in turn). An instance whose
// dial or handshake fails is skipped for a backoff and the stream tries the
// next one, so a client's setup fails only when every instance does; once
// its backoff is over, the next stream tries it again. Each cookie file is
// read again when its modification time or size changes, and when tor
// refuses the cookie (it regenerates it at every start).
type torPool struct {
	log   *slog.Logger
	insts []*torInst

	mu   sync.Mutex
	turn int // where the search for the least loaded starts, for ties
}

type torInst struct {
	TorInstance
	index int

	// under torPool.mu
	open     int
	failures int       // in a row
	retryAt  time.Time // skipped before, unless every instance is
	lastErr  error

	cookieMu sync.Mutex
	cookie   []byte
	modTime  time.Time
	size     int64
}

func newTorPool(log *slog.Logger, insts []TorInstance) *torPool {
	p := &torPool{log: log}
	for i, ti := range insts {
		p.insts = append(p.insts, &torInst{TorInstance: ti, index: i})
	}
	return p
}

// order is the instances to try, in order: those not backing off, the
// least loaded first (ties from turn on), then those backing off, the one
// whose backoff ends first first.
func (p *torPool) order(now time.Time) []*torInst {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.insts)
	var up, down []*torInst
	for k := range n {
		ti := p.insts[(p.turn+k)%n]
		if ti.retryAt.After(now) {
			down = append(down, ti)
		} else {
			up = append(up, ti)
		}
	}
	p.turn = (p.turn + 1) % n
	slices.SortStableFunc(up, func(a, b *torInst) int { return cmp.Compare(a.open, b.open) })
	slices.SortStableFunc(down, func(a, b *torInst) int { return a.retryAt.Compare(b.retryAt) })
	return append(up, down...)
}

// dial opens a stream to one instance, reporting meta; release ends its
// count when the stream closes. Each attempt has its own timeout.
func (p *torPool) dial(ctx context.Context, timeout, handshake time.Duration, meta extorport.Meta) (*net.TCPConn, func(), error) {
	var errs []error
	for _, ti := range p.order(time.Now()) {
		p.mu.Lock()
		ti.open++ // counted from the choice on, so that concurrent dials spread
		p.mu.Unlock()
		conn, err := p.dialOne(ctx, ti, timeout, handshake, meta)
		if err == nil {
			p.up(ti)
			return conn, func() { p.mu.Lock(); ti.open--; p.mu.Unlock() }, nil
		}
		p.mu.Lock()
		ti.open--
		p.mu.Unlock()
		if ctx.Err() != nil || errors.Is(err, extorport.ErrBadUserAddr) || errors.Is(err, extorport.ErrBadTransport) {
			return nil, nil, err // the server closes, or no instance would take this stream
		}
		p.down(ti, err)
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return nil, nil, errs[0]
	}
	return nil, nil, fmt.Errorf("every tor instance failed: %w", errors.Join(errs...))
}

// dialOne dials ti with its cookie; when tor refuses the cookie and the
// file has changed since it was read (tor restarted), once again with the
// new one.
func (p *torPool) dialOne(ctx context.Context, ti *torInst, timeout, handshake time.Duration, meta extorport.Meta) (*net.TCPConn, error) {
	for attempt := 0; ; attempt++ {
		cookie, err := ti.readCookie(attempt > 0)
		if err != nil {
			return nil, err
		}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		conn, err := extorport.Dial(dctx, ti.ExtORPort,
			extorport.ClientConfig{CookiePath: ti.CookiePath, Cookie: cookie, Timeout: handshake}, meta)
		cancel()
		if err == nil || attempt > 0 || !errors.Is(err, extorport.ErrAuthFailed) || !ti.changed(cookie) {
			return conn, err
		}
	}
}

// readCookie returns ti's cookie: the one read before while the file's
// modification time and size are the same, unless fresh.
func (ti *torInst) readCookie(fresh bool) ([]byte, error) {
	st, err := os.Stat(ti.CookiePath)
	if err != nil {
		return extorport.ReadCookieFile(ti.CookiePath) // its error, a *CookieFileError
	}
	ti.cookieMu.Lock()
	defer ti.cookieMu.Unlock()
	if !fresh && ti.cookie != nil && st.ModTime().Equal(ti.modTime) && st.Size() == ti.size {
		return ti.cookie, nil
	}
	cookie, err := extorport.ReadCookieFile(ti.CookiePath)
	if err != nil {
		ti.cookie = nil
		return nil, err
	}
	ti.cookie, ti.modTime, ti.size = cookie, st.ModTime(), st.Size()
	return cookie, nil
}

// changed reports whether the cookie file now holds another cookie than
// the one used.
func (ti *torInst) changed(used []byte) bool {
	cookie, err := extorport.ReadCookieFile(ti.CookiePath)
	return err == nil && !bytes.Equal(cookie, used)
}

// down puts ti in backoff after a failure, and says so when it was up.
func (p *torPool) down(ti *torInst, err error) {
	p.mu.Lock()
	ti.failures++
	wait := torBackoffMin << min(ti.failures-1, 10)
	wait = min(wait, torBackoffMax)
	ti.retryAt = time.Now().Add(wait)
	ti.lastErr = err
	failures := ti.failures // read under the lock: concurrent dials fail together
	p.mu.Unlock()
	if len(p.insts) == 1 {
		return // the caller says why the client's connection is closed
	}
	log := p.log.Debug
	if failures == 1 {
		log = p.log.Warn
	}
	log("a tor instance failed: its streams go to the others meanwhile", "instance", ti.index, "extorport", ti.ExtORPort,
		"retry_in", wait, "failures", failures, "err", err)
}

// up clears ti's backoff after a success, and says so when it was down.
func (p *torPool) up(ti *torInst) {
	p.mu.Lock()
	was := ti.failures
	ti.failures, ti.retryAt, ti.lastErr = 0, time.Time{}, nil
	p.mu.Unlock()
	if was > 0 && len(p.insts) > 1 {
		p.log.Info("a tor instance is back", "instance", ti.index, "extorport", ti.ExtORPort, "after_failures", was)
	}
}

// Open returns, per instance in order, the streams open there now.
func (p *torPool) Open() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]int, len(p.insts))
	for i, ti := range p.insts {
		out[i] = ti.open
	}
	return out
}
