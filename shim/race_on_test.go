//go:build race

package shim

// raceEnabled: the race detector makes sync.Pool drop items at random.
const raceEnabled = true
