package execdriver

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary play a driver that is killed in the middle
// of a command (LATCH_EXEC_ORPHAN names the run file and the marker).
func TestMain(m *testing.M) {
	if spec := os.Getenv("LATCH_EXEC_ORPHAN"); spec != "" {
		runFile, marker, _ := strings.Cut(spec, ":")
		d := &Driver{RunFile: runFile}
		// The command writes its pid, then stays: the parent kills this
		// process meanwhile, as a power cut or SIGKILL would.
		d.Stop(context.Background(), Service{App: "a", Service: "s", Stop: "sleep 600 & echo $$ > " + marker + ".sh; echo $! > " + marker + "; wait"})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A command of a driver that was killed keeps running (its process group is
// its own); the next driver's Reap kills it before anything else runs.
func TestReapKillsTheCommandsOfADeadDriver(t *testing.T) {
	dir := t.TempDir()
	runFile, marker := filepath.Join(dir, "exec-running"), filepath.Join(dir, "pid")
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "LATCH_EXEC_ORPHAN="+runFile+":"+marker)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	for deadline := time.Now().Add(30 * time.Second); pid == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			child.Process.Kill()
			t.Fatal("the command never started")
		}
		if b, err := os.ReadFile(marker); err == nil && len(b) > 0 && b[len(b)-1] == '\n' {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	child.Process.Kill()
	child.Wait()
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	if !alive(pid) {
		t.Fatalf("the command's child %d died with its driver: nothing to reap, the test proves nothing", pid)
	}
	// The shell itself dies with its driver (Pdeathsig): it runs no
	// further step of the command beside the next agent.
	b, _ := os.ReadFile(marker + ".sh")
	shell, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	for deadline := time.Now().Add(10 * time.Second); shell > 0 && alive(shell) && !zombie(shell); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the command's shell %d outlived its driver", shell)
		}
	}
	rec, _ := os.ReadFile(runFile)
	if !strings.HasPrefix(string(rec), strconv.Itoa(shell)+" ") {
		t.Fatalf("run file holds %q, want the command's process group %d", rec, shell)
	}

	n, err := (&Driver{RunFile: runFile}).Reap()
	if err != nil || n != 1 {
		t.Fatalf("Reap = %d, %v; want 1 group killed", n, err)
	}
	for deadline := time.Now().Add(10 * time.Second); alive(pid) && !zombie(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still runs after Reap", pid)
		}
	}
	if rec, _ := os.ReadFile(runFile); len(rec) != 0 {
		t.Errorf("run file after Reap holds %q, want nothing", rec)
	}
	// A second Reap finds nothing, and a recorded pid that now names
	// another process (its start time differs) is never killed.
	os.WriteFile(runFile, []byte(strconv.Itoa(os.Getpid())+" 1 "+bootID()+"\n"), 0o600)
	if n, err := (&Driver{RunFile: runFile}).Reap(); err != nil || n != 0 {
		t.Fatalf("Reap of a reused pid = %d, %v; want 0 killed", n, err)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] == 'Z'
}
