package chain

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

// inprocHop is an in-process server transport serving one slot. Unlike a
// child it serves that slot alone, so it never runs with another slot's
// options; its state directory is recorded and kept like a child's (see
// stateDirs), so obfs4's cert survives torrc edits here too, and a slot
// moved from obfs4proxy to the builtin obfs4 (or back) keeps its keys: the
// two keep the same obfs4_state.json.
type inprocHop struct {
	slot
	st   transport.ServerTransport
	opts metadata.Args // its ServerConfig.Options

	// stateDir is its ServerConfig.StateDir, a name under the server's
	// state directory; copyOf, when set, the directory it starts as a copy
	// of.
	stateDir, copyOf string

	srv transport.Server // once started
	err error            // why it could not start
}

// serverTransport returns the in-process transport that serves method of
// plugin p on the bridge, nil when a child serves it, or why the method
// cannot be served here.
func (s *Server) serverTransport(p Plugin, method string) (transport.ServerTransport, error) {
	switch p.Kind {
	case ExecPlugin:
		return nil, nil
	case BuiltinPlugin:
		if st := s.opt.InProcess[method]; st != nil {
			return st, nil
		}
		return transport.BuiltinServer(method)
	case SOCKSPlugin:
		return nil, fmt.Errorf("an unmanaged SOCKS5 PT (socks5 %s) is a client-side plugin: a bridge runs the server side of its transports itself; serve %s with --plugin %s=PATH or --builtin %s",
			p.Addr, method, method, method)
	}
	return nil, fmt.Errorf("a %v plugin cannot serve on a bridge", p.Kind)
}

// inprocFor returns the in-process hop that serves sl: the one an earlier
// Start made for it, or a new one in dir, sl's state directory from an
// earlier run, or in a copy of dir when another hop or a child holds it
// (the slots shared a child before), or for a new slot in a new directory.
func (s *Server) inprocFor(sl hopSlot, dir string, dirs *stateDirs) *inprocHop {
	for _, h := range s.inprocs {
		if h.slot == sl.slot && h.st == sl.transport && sameArgs(h.opts, sl.opts) && (dir == "" || h.stateDir == dir) {
			return h
		}
	}
	h := &inprocHop{slot: sl.slot, st: sl.transport, opts: sl.opts, stateDir: dir}
	if dir == "" || s.holds(dir) {
		h.stateDir, h.copyOf = s.newStateDir(sl, dirs), dir
	}
	s.inprocs = append(s.inprocs, h)
	return h
}

// startInProcess starts the in-process hops that have not started (nor
// failed) yet, each from its state directory: obfs4 loads its keys there,
// or generates them on first use.
func (s *Server) startInProcess(ctx context.Context, hops []*inprocHop) {
	for _, h := range hops {
		if h.srv != nil || h.err != nil {
			continue
		}
		dir := filepath.Join(s.opt.StateDir, h.stateDir)
		who := "builtin " + h.Method
		s.restoreStateLogged(who, dir)
		srv, err := h.st.Start(ctx, transport.ServerConfig{StateDir: dir, Options: h.opts})
		if err != nil {
			h.err = err
			continue
		}
		s.keepStateLogged(who, dir)
		s.mu.Lock()
		if s.closed { // Close has run, or runs, without it
			s.mu.Unlock()
			srv.Close()
			h.err = errors.New("server is closed")
			continue
		}
		h.srv = srv
		s.mu.Unlock()
		s.log.Info("in-process transport started", "method", h.Method, "chain", h.Alias, "hop", h.Hop, "state_dir", h.stateDir)
	}
}
