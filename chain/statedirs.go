package chain

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"golang.org/x/sys/unix"
)

// A server child's state directory holds its keys: obfs4's node id and
// private key, and so the cert every distributed Bridge line carries. Its
// name must therefore survive the torrc edits an operator makes (reordering
// --plugin and --chain flags, adding or removing a chain, changing a hop's
// options), which move a child's place among the children.
//
// What a key belongs to is a slot, one position of one chain: the Bridge
// line of the alias carries hop N's cert. The server records in a small
// file in its state directory which directory each slot's child used, and
// gives the slot that directory again on every start:
//
//   - Slots share a child only when their methods' options agree (a PT takes
//     one option set per method) and they have the same directory.
//   - A slot whose directory is held by a child it cannot share (its options
//     now differ from the other slots there) gets a new directory with a
//     copy of the old one's state, so it keeps its cert.
//   - A slot seen for the first time joins a child it may share, or gets a
//     new directory named after it: <program>-<alias>-<hop>.
//
// A slot the record lacks (a first start, an upgrade from a version that
// named directories <program>-<plugin index>-<child index>, a lost record,
// a chain not started since) takes a directory that no slot of the record
// claims: the one named after it if there is one, else the one the old
// naming gave it for the same torrc, if there is one.
const stateDirsFile = "state-dirs.json"

// slot is one position of one chain: what a child's state belongs to. The
// method is part of it: another PT at that position has other keys.
type slot struct {
	Alias  string `json:"alias"`
	Hop    int    `json:"hop"`
	Method string `json:"method"`
}

// stateDirs is the record of which state directory (a name under the
// server's state directory) each slot's child uses.
type stateDirs struct {
	root  string          // the server's state directory
	found bool            // the file existed
	dirs  map[slot]string // by slot
	saved map[slot]string // as on disk
	lock  *os.File        // held from load to release (see loadStateDirs)
}

type stateDirsFileV1 struct {
	Comment string          `json:"comment"`
	Slots   []stateDirEntry `json:"slots"`
}

type stateDirEntry struct {
	slot
	Dir string `json:"dir"`
}

const stateDirsComment = "ptcombiner-server: the state directory of the PT serving each chain position. " +
	"The directories hold the bridge's keys (obfs4's cert): keep this file with them."

// loadStateDirs reads the record in root; a missing file is an empty
// record, an unreadable one an error (guessing would publish new certs).
//
// Several servers may share root: tor gives the ptcombiner-servers of all
// its ServerTransportPlugin lines one pt_state, and starts them at once.
// Each holds an exclusive lock (flock(2) on a file beside the record) from
// its load to its release, after its save, so that none writes a record
// read before another's save and drops that server's slots.
func loadStateDirs(root string) (*stateDirs, error) {
	lock, err := os.OpenFile(filepath.Join(root, stateDirsFile+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("the state directories' lock: %w", err)
	}
	for {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("the state directories' lock: %w", err)
	}
	r, err := readStateDirs(root)
	if err != nil {
		lock.Close()
		return nil, err
	}
	r.lock = lock
	return r, nil
}

// release ends the lock loadStateDirs took; the record stays usable.
func (r *stateDirs) release() {
	if r.lock != nil {
		r.lock.Close()
		r.lock = nil
	}
}

func readStateDirs(root string) (*stateDirs, error) {
	r := &stateDirs{root: root, dirs: map[slot]string{}, saved: map[slot]string{}}
	path := filepath.Join(root, stateDirsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the state directories' record: %w", err)
	}
	var f stateDirsFileV1
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w (it says which state directory, and so which keys, each chain position uses: repair it, or remove it to fall back to the directories' names)", path, err)
	}
	for _, e := range f.Slots {
		if !validDirName(e.Dir) {
			return nil, fmt.Errorf("%s: directory %q of %s hop %d is not a name in %s", path, e.Dir, e.Alias, e.Hop, root)
		}
		r.dirs[e.slot] = e.Dir
		r.saved[e.slot] = e.Dir
	}
	r.found = true
	return r, nil
}

func validDirName(name string) bool {
	return name != "" && name != "." && name != ".." && filepath.Base(name) == name
}

// used reports whether some slot's record names dir.
func (r *stateDirs) used(dir string) bool {
	for _, d := range r.dirs {
		if d == dir {
			return true
		}
	}
	return false
}

// save writes the record when it changed, atomically.
func (r *stateDirs) save() error {
	if r.found && sameDirs(r.dirs, r.saved) {
		return nil
	}
	f := stateDirsFileV1{Comment: stateDirsComment}
	for s, d := range r.dirs {
		f.Slots = append(f.Slots, stateDirEntry{slot: s, Dir: d})
	}
	sort.Slice(f.Slots, func(i, j int) bool {
		a, b := f.Slots[i], f.Slots[j]
		if a.Alias != b.Alias {
			return a.Alias < b.Alias
		}
		if a.Hop != b.Hop {
			return a.Hop < b.Hop
		}
		return a.Method < b.Method
	})
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(r.root, stateDirsFile), append(b, '\n')); err != nil {
		return fmt.Errorf("recording the state directories: %w", err)
	}
	r.saved = make(map[slot]string, len(r.dirs))
	for s, d := range r.dirs {
		r.saved[s] = d
	}
	r.found = true
	return nil
}

func sameDirs(a, b map[slot]string) bool {
	if len(a) != len(b) {
		return false
	}
	for s, d := range a {
		if b[s] != d {
			return false
		}
	}
	return true
}

// writeFileAtomic writes a temporary file in path's directory, syncs it and
// renames it over path, so a crash leaves the old file or the new one.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort; the write already failed
	}
	return err
}

// naturalDir is the name a slot's first directory gets: program, alias
// and hop. Aliases are C identifiers, so no two slots share one.
func naturalDir(program string, s slot) string {
	return program + "-" + s.Alias + "-" + strconv.Itoa(s.Hop)
}

// legacyDir is the name versions before the record gave a child: its
// program, its plugin's index among the --plugin flags, and its index in
// the order children were created.
func legacyDir(program string, plugin, child int) string {
	return program + "-" + strconv.Itoa(plugin) + "-" + strconv.Itoa(child)
}

// copyStateDir copies the regular files and directories under src into a
// new directory dst (owner-only modes: it holds keys), through a temporary
// directory renamed into place, so dst is whole or absent.
func copyStateDir(src, dst string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	err = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil || rel == "." {
			return err
		}
		to := filepath.Join(tmp, rel)
		switch {
		case d.IsDir():
			return os.Mkdir(to, 0o700)
		case d.Type().IsRegular():
			return copyFile(path, to)
		default:
			return fmt.Errorf("%s: not a regular file or directory", path)
		}
	})
	if errors.Is(err, fs.ErrNotExist) && !exists(src) {
		err = nil // nothing to copy: the child never ran
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.RemoveAll(tmp) // best effort; the copy already failed
		return fmt.Errorf("copying state directory %s to %s: %w", src, dst, err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o600)
}
