package ctl

import "time"

// unixDate renders a snapshot date as qemu-img does, in local time.
func unixDate(sec int64) string {
	return time.Unix(sec, 0).Format("2006-01-02 15:04:05")
}
