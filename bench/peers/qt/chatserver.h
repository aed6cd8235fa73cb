// Console port of the Qt QWebSocketServer chat server from the article in
// shared/seeds/ (the "Widget" server), for bench/compare.
//
// Kept from the article: QWebSocketServer in NonSecureMode, the newConnection
// slot (MyselfNewConnectCallBackSlot) that takes nextPendingConnection(),
// appends it to `sockets` and connects disconnected / textMessageReceived /
// error; the client's name is its origin(); a text message is parsed with
// QJsonDocument::fromJson, a parse failure is a message to the server, and a
// private message is routed by a linear scan of `sockets` comparing `dst`
// with each name and sent with sendTextMessage() to every match.
//
// Added, minimally, so that it speaks the core of docs/PROTOCOL.md like the
// other peers (see bench/peers/README.md):
//   - no widgets: QCoreApplication; the port (and optional cert/key) come from
//     the command line; the text-box log lines go to stderr only with -v;
//   - name: `?name=` in the request URL wins over origin() (computed once per
//     connection and kept as the socket's objectName());
//   - the forwarded JSON gets "src" set to the sender's real name (the article
//     forwarded the text unchanged);
//   - the text is decoded with toUtf8() (the article used toLatin1(), which
//     turns every non-Latin-1 character into '?');
//   - rooms: {"type":"join"|"leave","room":"#r"}; a message whose dst starts
//     with '#' goes to every member except the sender ("not a member of #r"
//     error if the sender is not in it);
//   - {"type":"list"} answers {"src":"@gateway","dst":ME,"type":"list",
//     "msg":"N connected","names":[...]};
//   - an unknown recipient answers {"src":"@gateway","dst":ME,"type":"error",
//     "msg":"recipient not connected: X"} ("ref" = the request's "id");
//   - JSON without a string dst (or with dst "@...") is a message to the
//     server, like plain text; messages to the server are counted, not shown;
//   - optional wss: QWebSocketServer::SecureMode with a QSslConfiguration
//     built from --cert/--key (PEM).
#pragma once

#include <QHash>
#include <QJsonValue>
#include <QList>
#include <QObject>
#include <QSet>
#include <QSslConfiguration>
#include <QStringList>
#include <QWebSocket>
#include <QWebSocketServer>

class ChatServer : public QObject
{
    Q_OBJECT
public:
    ChatServer(const QHostAddress &host, quint16 port, const QSslConfiguration *ssl,
               bool verbose, QObject *parent = nullptr);
    ~ChatServer() override;
    bool isListening() const { return webServer->isListening(); }
    QString errorString() const { return webServer->errorString(); }

private slots:
    void MyselfNewConnectCallBackSlot(); // new-connection callback, as in the article

private:
    void onText(QWebSocket *websocket, const QString &msg);
    void notice(QWebSocket *to, const QString &type, const QString &msg,
                const QJsonValue &ref, const QStringList *names = nullptr);
    static QString nameOf(const QWebSocket *socket) { return socket->objectName(); }

    QWebSocketServer *webServer;
    QList<QWebSocket *> sockets;
    QHash<QString, QSet<QWebSocket *>> rooms; // added: room -> members
    quint64 toServer = 0;                     // added: messages to the server
    bool verbose;
};
