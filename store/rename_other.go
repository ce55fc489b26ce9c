//go:build !linux

package store

// renameNoReplace renames from to to, failing with an error wrapping
// os.ErrExist when to exists. Without renameat2 it checks first and
// renames, which leaves only a narrow race.
func renameNoReplace(from, to string) error { return checkAndRename(from, to) }
