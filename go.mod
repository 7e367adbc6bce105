module github.com/ptcombiner/ptcombiner

go 1.26.8

require (
	github.com/urfave/cli/v2 v2.27.7
	gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib v1.6.0
	golang.org/x/net v0.62.0
)

require go.uber.org/goleak v1.3.0 // indirect
