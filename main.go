// Command latch is an over-the-air update agent for embedded Linux boards.
//
// It downloads new releases in the background and applies them only when the
// applications allow it: an application in a critical section holds an update
// lock (balenaOS's paths and rules), and latch never stops, restarts, replaces
// or reboots under a held lock unless an operator forces it.
//
// main.go only parses the subcommand and exits with a meaningful status; each
// subcommand lives in a cmd_*.go file of this package.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand of the latch binary.
type command struct {
	summary string
	// run parses args (the arguments after the subcommand name) and runs.
	// It returns an error to print, or an *exitError for a specific status.
	run func(ctx context.Context, args []string) error
}

// commands is the table of subcommands, filled by the cmd_*.go files' init.
var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, args []string) error) {
	commands[name] = command{summary: summary, run: run}
}

// exitError carries a process exit status (and an optional message) up to main.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// Exit statuses shared by the subcommands.
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitLocked   = 73 // EX_CANTCREAT: the lock is held by someone else
	exitTempFail = 75 // EX_TEMPFAIL: gave up waiting for a lock
)

func usage(w io.Writer) {
	fmt.Fprintf(w, "latch: an over-the-air update agent that waits for the applications' update locks.\n\n")
	fmt.Fprintf(w, "Usage: latch COMMAND [flags] [args]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nRun 'latch COMMAND -h' for the flags of a command.\n")
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "--help", "help":
		usage(os.Stdout)
		return exitOK
	case "-v", "--version":
		name = "version"
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "latch: unknown command %q\n\n", name)
		usage(os.Stderr)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, args[1:])
	return exitStatus(name, err)
}

// exitStatus prints err (if any) and maps it to the process exit status.
func exitStatus(name string, err error) int {
	if err == nil || errors.Is(err, context.Canceled) {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(os.Stderr, "latch %s: %s\n", name, strings.TrimSpace(ee.msg))
		}
		return ee.code
	}
	if errors.Is(err, errUsage) {
		return exitUsage
	}
	fmt.Fprintf(os.Stderr, "latch %s: %v\n", name, err)
	return exitFailure
}

// errUsage is returned by a flag parse that already printed its message.
var errUsage = errors.New("usage")
