package runner

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// manFlag is hidden from --help and from the page itself: `make deb` runs
// each program with it, so that the man page is made from the very cli.App
// the program runs (urfave/cli's ToMan, through go-md2man).
const manFlag = "man-page"

// seeAlso ends every page (roff: ToMan's own sections stop at the options).
const seeAlso = `.SH SEE ALSO
.BR tor (1),
.BR obfs4proxy (1),
.BR ptcombiner-client (1),
.BR ptcombiner-server (1).
The guides: /usr/share/doc/ptcombiner/client.md and bridge.md (security.md, performance.md).
`

// ManPage returns app's man page, section 1, in roff.
func ManPage(app *cli.App) (string, error) {
	page, err := app.ToManWithSection(1)
	if err != nil {
		return "", fmt.Errorf("man page: %w", err)
	}
	return page + seeAlso, nil
}
