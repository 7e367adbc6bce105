package chain

import (
	"reflect"
	"testing"
)

// Unknown names are ignored (pt-spec 3.2.2); "*" asks for every alias and
// method of the configuration; repeats are served once, in tor's order.
func TestRequested(t *testing.T) {
	c := testConfig(t) // method test, chains t2 and t3
	for _, tc := range []struct {
		asked, serve, ignored []string
	}{
		{[]string{"*"}, []string{"t2", "t3", "test"}, nil},
		{[]string{"t3", "nosuch", "t3", "*", "obfs4"}, []string{"t3", "t2", "test"}, []string{"nosuch", "obfs4"}},
		{[]string{"nosuch"}, nil, []string{"nosuch"}},
	} {
		serve, ignored := c.Requested(tc.asked)
		if !reflect.DeepEqual(serve, tc.serve) || !reflect.DeepEqual(ignored, tc.ignored) {
			t.Errorf("Requested(%q) = %q, %q; want %q, %q", tc.asked, serve, ignored, tc.serve, tc.ignored)
		}
	}
}
