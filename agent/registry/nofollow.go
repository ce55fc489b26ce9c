package registry

import "syscall"

// syscallNoFollow keeps a planted symlink from redirecting a write.
const syscallNoFollow = syscall.O_NOFOLLOW
