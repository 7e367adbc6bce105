package procstat

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

func TestSelf(t *testing.T) {
	pid := os.Getpid()
	deadline := time.Now().Add(5 * time.Second)
	for CPUSeconds(pid) == 0 && time.Now().Before(deadline) {
		for i := 0; i < 1e7; i++ {
		}
	}
	if CPUSeconds(pid) <= 0 {
		t.Error("CPUSeconds of this process is 0")
	}
	if RSSKiB(pid) <= 0 {
		t.Error("RSSKiB of this process is 0")
	}
	before := Descriptors(pid)
	f, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := Descriptors(pid); got != before+1 {
		t.Errorf("Descriptors: %d after opening a file, %d before", got, before)
	}
	f.Close()
}

func TestChildren(t *testing.T) {
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep:", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if kids := Children(os.Getpid()); !slices.Contains(kids, cmd.Process.Pid) {
		t.Errorf("Children = %v, want %d among them", kids, cmd.Process.Pid)
	}
}

func TestGone(t *testing.T) {
	const nobody = 1 << 30 // above pid_max
	if CPUSeconds(nobody) != 0 || RSSKiB(nobody) != 0 || Descriptors(nobody) != 0 || Children(nobody) != nil {
		t.Error("a process that does not exist has figures")
	}
}
