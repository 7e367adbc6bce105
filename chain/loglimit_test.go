package chain

import (
	"strings"
	"testing"
	"time"
)

// A flood of one kind of warning logs the burst, says that the rest are
// held back, and reports how many were with the first of the next period.
func TestLogLimit(t *testing.T) {
	logs := &logBuf{}
	log := newLogger(logs)
	l := logLimit{burst: 3, period: time.Hour}
	for range 10 {
		l.warn(log, "refused", "n", 1)
	}
	if n := strings.Count(logs.String(), "msg=refused"); n != 3 {
		t.Fatalf("%d warnings logged of 10, want the burst of 3:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), "held back until") {
		t.Errorf("the last warning of the burst does not say the rest are held back:\n%s", logs)
	}
	l.mu.Lock()
	l.start = l.start.Add(-time.Hour) // the period is over
	l.mu.Unlock()
	l.warn(log, "refused", "n", 1)
	if !strings.Contains(logs.String(), "held_back=7") {
		t.Errorf("the next period's first warning does not count the 7 held back:\n%s", logs)
	}
}
