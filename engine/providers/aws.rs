//! Provider: aws.
