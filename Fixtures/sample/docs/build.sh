#!/bin/sh
echo "built"
