package compose

import "latch/agent/internal/names"

// The name rules are agent/internal/names', shared with agent/docker.
var (
	isName           = names.IsName
	isEnvName        = names.IsEnvName
	isCapName        = names.IsCapName
	isImageRef       = names.IsImageRef
	isComposeVersion = names.IsComposeVersion
	isAlnum          = names.IsAlnum
)
