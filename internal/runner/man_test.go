package runner

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// --man-page prints the page of the app it is given (the flags the program
// runs with), and the page does not list the hidden flag itself.
func TestManPageFlag(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	read := make(chan []byte)
	go func() { b, _ := io.ReadAll(r); read <- b }()
	stdout := os.Stdout
	os.Stdout = w
	ran := false
	app := &cli.App{Name: "prog", Usage: "does things", Flags: append(Flags(), &cli.IntFlag{Name: "own-flag"}),
		Action: func(*cli.Context) error { ran = true; return nil }}
	status := Run(app, []string{"prog", "--man-page"})
	os.Stdout = stdout
	w.Close()
	page := string(<-read)
	r.Close()
	if status != 0 || ran {
		t.Fatalf("status %d, action ran %v", status, ran)
	}
	for _, want := range []string{".TH prog 1", "prog \\- does things", "\\fB--own-flag\\fP", "\\fB--chain\\fP", ".SH SEE ALSO"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, manFlag) {
		t.Errorf("page lists the hidden --%s:\n%s", manFlag, page)
	}
}
