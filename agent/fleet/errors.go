package fleet

import "errors"

// Errors that callers tell apart with errors.Is.
var (
	// ErrInvalidConfig is wrapped by every error of Config.Validate and OperatorConfig.Validate.
	ErrInvalidConfig = errors.New("invalid fleet configuration")
	// ErrPayloadTooLarge is returned for a message over the payload limit, sent or received.
	ErrPayloadTooLarge = errors.New("payload too large")
	// ErrBadCommand is wrapped by every refusal of ParseCommand and Command.Validate.
	ErrBadCommand = errors.New("bad command")
	// ErrBadTarget is wrapped by every refusal of ParseTarget and of a target to publish.
	ErrBadTarget = errors.New("bad target message")
	// ErrBadState is returned by PublishState for a state that is not a JSON object.
	ErrBadState = errors.New("bad state")
	// ErrNoResult is returned by SendCommand when no result came within the wait.
	ErrNoResult = errors.New("no result")
	// ErrClosed is returned by a Device's methods after Close.
	ErrClosed = errors.New("fleet connection closed")
)
