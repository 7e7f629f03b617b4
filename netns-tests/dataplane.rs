//! netns tests
