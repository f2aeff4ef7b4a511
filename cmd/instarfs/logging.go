package main

import (
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"
)

func setupLogging(level, format string) {
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		lvl = logrus.WarnLevel
	}
	logrus.SetLevel(lvl)
	logrus.SetOutput(os.Stderr)
	if format == "json" {
		logrus.SetFormatter(&logrus.JSONFormatter{})
	} else {
		logrus.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true})
	}
}

// dirOf is the directory file lies in (for "dir/img/", dir).
func dirOf(file string) string { return filepath.Dir(filepath.Clean(file)) }
