package runner

import (
	"fmt"
	"strings"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// RelayChildLog passes a child's LOG line on to tor, as tor would have
// logged it had it run the child itself, prefixed with the program's name
// and sanitised (goptlib panics on non-ASCII).
func RelayChildLog(program string, severity ptproc.Severity, message string) {
	msg := ptproc.Sanitize(program + ": " + message)
	switch severity {
	case ptproc.SeverityError:
		pt.Log(pt.LogSeverityError, msg)
	case ptproc.SeverityWarning:
		pt.Log(pt.LogSeverityWarning, msg)
	case ptproc.SeverityInfo:
		pt.Log(pt.LogSeverityInfo, msg)
	case ptproc.SeverityDebug:
		pt.Log(pt.LogSeverityDebug, msg)
	default: // ptproc.SeverityNotice
		pt.Log(pt.LogSeverityNotice, msg)
	}
}

// statusValue makes v safe as one STATUS value: no spaces, ASCII only.
func statusValue(v string) string {
	v = ptproc.Sanitize(v)
	if strings.ContainsAny(v, " \"\\") {
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
	}
	return v
}

// ReportEvent tells tor that a child exited or was restarted: a STATUS line
// for each chain that uses the program (tor 0.4.8 requires TRANSPORT=; see
// PROTOCOLS.md A17). The logger has already written the LOG line.
func ReportEvent(cfg *chain.Config, names []string, e chain.Event) {
	for _, name := range names {
		ch, ok := cfg.Lookup(name)
		if !ok {
			continue
		}
		uses := false
		for _, m := range ch.Hops {
			if p, ok := cfg.PluginFor(m); ok && p.Path == e.Program {
				uses = true
			}
		}
		if !uses {
			continue
		}
		line := fmt.Sprintf("STATUS TRANSPORT=%s CHILD=%s EVENT=%s CRASHES=%d", name, statusValue(e.Program), e.Kind, e.Crashes)
		if e.Pid != 0 {
			line += fmt.Sprintf(" PID=%d", e.Pid)
		}
		if e.Next > 0 {
			line += fmt.Sprintf(" RESTART_IN=%s", e.Next)
		}
		if e.Err != nil {
			line += " ERROR=" + statusValue(e.Err.Error())
		}
		if len(e.Stderr) > 0 { // scrubbed always: this line does not know --unsafe-logging
			line += " STDERR=" + statusValue(ElideAddrs(strings.Join(e.Stderr, " | ")))
		}
		fmt.Fprintln(pt.Stdout, line)
	}
}
