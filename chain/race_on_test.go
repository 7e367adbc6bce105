//go:build race

package chain

// raceEnabled: the race detector's shadow memory makes RSS figures
// meaningless, so the memory check is skipped under -race.
const raceEnabled = true
