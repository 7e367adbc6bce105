package chain

import (
	"log/slog"
	"sync"
	"time"
)

// logLimit lets one kind of warning through at most burst times a period.
// Anything on the machine can connect to a child's Extended ORPort (or take
// a client's shim), and a
// flood of such connections (a local port scan, a program retrying a port
// the kernel has since handed to a child) would write a warning each: at
// 8,000 a second, the log grew by half a million lines in three minutes
// here. What it holds back it counts, and says so with the first warning of
// the next period; the metrics (ptcombiner_extorport_handshakes_total) count every one.
type logLimit struct {
	burst  int
	period time.Duration

	mu    sync.Mutex
	start time.Time
	sent  int // warnings let through this period
	held  int // warnings held back this period
}

// Extended ORPort refusals, and shims taken: 20 a minute.
const (
	refusalBurst  = 20
	refusalPeriod = time.Minute
)

// warn logs msg with args unless this period's burst is spent.
func (l *logLimit) warn(log *slog.Logger, msg string, args ...any) {
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.start) >= l.period {
		if l.held > 0 {
			args = append(args, "held_back", l.held, "held_back_over", now.Sub(l.start).Round(time.Second))
		}
		l.start, l.sent, l.held = now, 0, 0
	}
	if l.sent >= l.burst {
		l.held++
		l.mu.Unlock()
		return
	}
	l.sent++
	if l.sent == l.burst {
		args = append(args, "note", "the rest of this kind are held back until "+l.start.Add(l.period).UTC().Format(time.TimeOnly)+" UTC")
	}
	l.mu.Unlock()
	log.Warn(msg, args...)
}
