package chain

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// A bridge's identity towards its users is obfs4's server state: the node
// id and identity key behind the cert of every Bridge line handed out, and
// the DRBG seed behind its packet lengths. obfs4proxy and the in-process
// obfs4 (the same module) rewrite obfs4_state.json at every start with
// os.WriteFile, which truncates the file and then writes it, without a sync:
// a crash or a power cut in between (a bridge that reboots while the
// combiner starts) leaves an empty or partial file, and the next start
// refuses it, or, had it been removed, would make a new identity and break
// every distributed Bridge line.
//
// So the server keeps the last state it saw a hop start with, whole, in
// obfs4_state.json.last-good beside it (written to a temporary file,
// synced and renamed), and before each start puts it back when the state
// file is there but does not parse. A missing state file is left missing:
// that is how an operator asks for a new identity (docs/bridge.md).

const (
	obfs4StateFile = "obfs4_state.json"
	lastGoodSuffix = ".last-good"
)

// obfs4State is what obfs4 needs of its state file; the other fields
// (public-key, iat-mode) are derived or optional.
type obfs4State struct {
	NodeID     string `json:"node-id"`
	PrivateKey string `json:"private-key"`
	DrbgSeed   string `json:"drbg-seed"`
}

// checkObfs4State says why b is not a usable obfs4 server state, or nil.
func checkObfs4State(b []byte) error {
	var st obfs4State
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	for _, f := range []struct {
		name, hex string
		size      int
	}{{"node-id", st.NodeID, 20}, {"private-key", st.PrivateKey, 32}, {"drbg-seed", st.DrbgSeed, 24}} {
		raw, err := hex.DecodeString(f.hex)
		if err != nil || len(raw) != f.size {
			return fmt.Errorf("%s is not %d bytes in hex", f.name, f.size)
		}
	}
	return nil
}

// restoreState puts dir's last good obfs4 state back when its state file
// exists and does not parse. It reports what it did for the log: "" when
// nothing was to be done.
func restoreState(dir string) (string, error) {
	path := filepath.Join(dir, obfs4StateFile)
	cur, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil // a first start, or an operator who asked for a new identity
	}
	if err != nil {
		return "", err
	}
	bad := checkObfs4State(cur)
	if bad == nil {
		return "", nil
	}
	good, err := os.ReadFile(path + lastGoodSuffix)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil // nothing to restore: the hop's own start reports the file
	}
	if err != nil {
		return "", err
	}
	if checkObfs4State(good) != nil {
		return "", nil
	}
	if err := writeFileAtomic(path, good); err != nil {
		return "", fmt.Errorf("restoring %s from %s: %w", path, path+lastGoodSuffix, err)
	}
	return fmt.Sprintf("%s did not parse (%d bytes: %v); restored it from %s, so the bridge keeps its cert", path, len(cur), bad, filepath.Base(path+lastGoodSuffix)), nil
}

// keepState records dir's obfs4 state, as a hop that started with it
// left it, as the last good one. A state that does not parse (or none) is
// not recorded.
func keepState(dir string) error {
	path := filepath.Join(dir, obfs4StateFile)
	cur, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // not obfs4, or a PT that keeps its state elsewhere
	}
	if err != nil {
		return err
	}
	if checkObfs4State(cur) != nil {
		return nil
	}
	if prev, err := os.ReadFile(path + lastGoodSuffix); err == nil && bytes.Equal(prev, cur) {
		return nil
	}
	return writeFileAtomic(path+lastGoodSuffix, cur)
}

// restoreStateLogged runs restoreState for who, a hop about to start in
// dir, and tells the operator.
func (s *Server) restoreStateLogged(who, dir string) {
	did, err := restoreState(dir)
	switch {
	case err != nil:
		s.log.Warn("cannot restore a hop's last good obfs4 state", "hop", who, "err", err)
	case did != "":
		s.log.Warn("a hop's obfs4 state was damaged (a crash while its PT rewrote it?)", "hop", who, "what", did)
	}
}

// keepStateLogged runs keepState for who, a hop that started in dir.
func (s *Server) keepStateLogged(who, dir string) {
	if err := keepState(dir); err != nil {
		s.log.Warn("cannot keep a copy of a hop's obfs4 state", "hop", who, "err", err)
	}
}
