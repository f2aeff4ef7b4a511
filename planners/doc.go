// Package planners turns image metadata into ordered steps for the worker to
// carry out. Planners do no I/O: they take what the worker read (allocation
// maps, sizes, cluster sizes) and return what to write, so they can be fuzzed
// and tested without images.
package planners
