"""The app API: the JSON contracts the integrating app calls over Lambda Invoke
(links, tokens, connection state), as plain request -> answer logic."""
